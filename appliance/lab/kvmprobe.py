"""Does KVM really work here? Run one `hlt` instruction in a KVM guest and check how it exits.

/dev/kvm existing proves little: under broken nested virtualisation the device opens and a VM is
created, but running a vCPU fails ("KVM internal error"). This runs the smallest real guest (real
mode, one page, `hlt`) and reports "ok" only if the vCPU exits with KVM_EXIT_HLT. Run it as a
separate process with a timeout (`python -m appliance.lab.kvmprobe`): a hang cannot block the lab.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
import sys

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_GET_REGS, KVM_SET_REGS = 0x8090AE81, 0x4090AE82
KVM_GET_SREGS, KVM_SET_SREGS = 0x8138AE83, 0x4138AE84
KVM_EXIT_HLT = 5
GUEST_ADDR = 0x1000
HLT = b"\xf4"


def probe() -> str:
    """'ok' or the reason KVM cannot run a guest."""
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"/dev/kvm: {e.strerror}"
    try:
        if fcntl.ioctl(kvm, KVM_GET_API_VERSION) != 12:
            return "unexpected KVM API version"
        vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        memory = mmap.mmap(-1, 0x1000)
        memory.write(HLT)
        address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
        region = struct.pack("=IIQQQ", 0, 0, GUEST_ADDR, 0x1000, address)
        fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)
        vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
        size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
        run = mmap.mmap(vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        sregs = bytearray(312)
        fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
        struct.pack_into("=QIIHH", sregs, 0, 0, 0xFFFF, 0, 0, 0)  # cs: base 0, selector 0
        fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
        regs = bytearray(144)
        fcntl.ioctl(vcpu, KVM_GET_REGS, regs)
        struct.pack_into("=QQ", regs, 128, GUEST_ADDR, 0x2)  # rip, rflags
        fcntl.ioctl(vcpu, KVM_SET_REGS, bytes(regs))
        fcntl.ioctl(vcpu, KVM_RUN, 0)
        reason = struct.unpack_from("=I", run, 8)[0]
        return "ok" if reason == KVM_EXIT_HLT else f"vCPU exit reason {reason}, expected HLT ({KVM_EXIT_HLT})"
    except OSError as e:
        return f"KVM ioctl failed: {e.strerror}"
    finally:
        os.close(kvm)


if __name__ == "__main__":
    verdict = probe()
    print(verdict)
    sys.exit(0 if verdict == "ok" else 1)
