# The Attic binary cache VM: a worker VM plus atticd.
{ config, pkgs, lib, ... }:

{
  imports = [
    ./vm-aarch64-utm.nix
    ../modules/attic.nix
  ];

  networking.hostName = "nixos-utm-cache";
}
