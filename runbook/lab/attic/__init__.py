"""Stand-ins for atticd, atticd-atticadm and the attic client (NixOS-only programs).

They run inside lab hosts; see DESIGN.md "The lab" and /work/shared/reference/attic.md.
"""
