"""SSH to the VMs: paramiko sessions, login-shell-proof scripts, known_hosts."""
