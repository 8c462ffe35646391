"""Stand-ins for NixOS-only programs, run inside lab hosts through the wrappers in ../bin."""
