# Builds one NixOS system from a machine file and a user file
# (the shape of mitchellh/nixos-config's lib/mksystem.nix).
{ nixpkgs, overlays, inputs }:

name: { system, user }:

let
  machineConfig = ../machines/${name}.nix;
  userOSConfig = ../users/${user}/nixos.nix;
in nixpkgs.lib.nixosSystem {
  inherit system;

  modules = [
    { nixpkgs.overlays = overlays; }
    { nixpkgs.config.allowUnfree = true; }

    machineConfig
    userOSConfig

    {
      config._module.args = {
        currentSystem = system;
        currentSystemName = name;
        currentSystemUser = user;
        inputs = inputs;
      };
    }
  ];
}
