# The appliance image built from Debian's cloud image instead of mmdebstrap (images/build.py): the
# same package list, the same scripts (install-appliance.sh, configure-system.sh), the same units.
# Packer >= 1.6.6 (Debian 12's) with its built-in qemu builder. Run it through images/packer/build.sh,
# which makes a throwaway SSH key and the cloud-init seed carrying it:
#   images/packer/build.sh              (output: build/packer/appliance.qcow2)
# `packer validate images/packer/appliance.pkr.hcl` needs nothing generated.

variable "debian_image_url" {
  type    = string
  default = "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
}

# images/packer/build.sh always passes file:<the image's directory>/SHA512SUMS (Packer fetches it over
# HTTPS). The default skips the check only so that `packer validate` works offline.
variable "debian_image_checksum" {
  type    = string
  default = "none"
}

variable "repo" {
  type        = string
  default     = "."
  description = "the appliance repository (packer runs from its top directory)"
}

variable "seed_dir" {
  type        = string
  default     = "images/packer/seed"
  description = "cloud-init NoCloud seed (user-data, meta-data) authorizing ssh_private_key_file for root"
}

variable "ssh_private_key_file" {
  type    = string
  default = ""
}

variable "accelerator" {
  type        = string
  default     = "kvm"
  description = "kvm where it works; tcg (slow) elsewhere"
}

variable "output_directory" {
  type    = string
  default = "build/packer"
}

source "qemu" "appliance" {
  iso_url          = var.debian_image_url
  iso_checksum     = var.debian_image_checksum
  disk_image       = true
  disk_size        = "2G"
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  format           = "qcow2"
  disk_compression = true
  accelerator      = var.accelerator
  cpus             = 2
  memory           = 1024
  headless         = true
  output_directory = var.output_directory
  vm_name          = "appliance.qcow2"

  # cloud-init's NoCloud datasource reads a drive labelled cidata.
  cd_files = ["${var.seed_dir}/user-data", "${var.seed_dir}/meta-data"]
  cd_label = "cidata"

  communicator         = "ssh"
  ssh_username         = "root"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "20m"
  shutdown_command     = "systemctl poweroff"
}

build {
  sources = ["source.qemu.appliance"]

  provisioner "shell" {
    inline = ["cloud-init status --wait >/dev/null || true", "mkdir -p /tmp/appliance-build/src"]
  }

  provisioner "file" {
    sources     = ["${var.repo}/images/packages.txt", "${var.repo}/images/scripts", "${var.repo}/images/rootfs"]
    destination = "/tmp/appliance-build/"
  }

  provisioner "file" {
    sources     = ["${var.repo}/appliance", "${var.repo}/pyproject.toml", "${var.repo}/README.md"]
    destination = "/tmp/appliance-build/src/"
  }

  # Every unit of systemd/ (install-appliance.sh installs *.service and *.timer, enables those with [Install]).
  provisioner "file" {
    source      = "${var.repo}/systemd/"
    destination = "/tmp/appliance-build/units"
  }

  # The package list of images/build.py (the cloud image already has its cloud kernel and GRUB).
  provisioner "shell" {
    environment_vars = ["DEBIAN_FRONTEND=noninteractive"]
    inline = [
      "apt-get update -q",
      "apt-get install -y -q --no-install-recommends $(sed 's/#.*//' /tmp/appliance-build/packages.txt)",
    ]
  }

  provisioner "shell" {
    inline = [
      "sh /tmp/appliance-build/scripts/install-appliance.sh --source /tmp/appliance-build/src --units /tmp/appliance-build/units",
    ]
  }

  # Cloud-image specifics: the appliance owns the interfaces (names eth0.. as in the site files),
  # cloud-init and its network configuration go.
  provisioner "shell" {
    environment_vars = ["DEBIAN_FRONTEND=noninteractive"]
    inline = [
      "echo 'GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX net.ifnames=0 biosdevname=0\"' > /etc/default/grub.d/appliance.cfg",
      "update-grub",
      "apt-get purge -y -q cloud-init && rm -rf /var/lib/cloud /etc/cloud",
      "rm -f /etc/network/interfaces.d/50-cloud-init /etc/netplan/*.yaml",
      "sh /tmp/appliance-build/scripts/configure-system.sh /tmp/appliance-build/rootfs",
      "rm -rf /tmp/appliance-build /root/.ssh/authorized_keys",
      "test \"$(getent shadow root | cut -d: -f2)\" = '*'",
    ]
  }
}
