# A worker VM in UTM on Apple Silicon.
{ config, pkgs, modulesPath, ... }:

{
  imports = [
    ./hardware/vm-aarch64-utm.nix
    ./vm-shared.nix
  ];

  # Interface is this on my M1 (UTM's virtio NIC); check `ip link` on a new VM.
  networking.interfaces.enp0s10.useDHCP = true;

  # UTM's SPICE guest tools (clipboard, resolution).
  services.spice-vdagentd.enable = true;

  nixpkgs.config.allowUnsupportedSystem = true;
}
