"""Nix: the nixos-config checkout, Nix files, its Makefile."""
