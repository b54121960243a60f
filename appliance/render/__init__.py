"""Pure rendering: the validated site model -> the desired state of every subsystem (spec.py)."""
