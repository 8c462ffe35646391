{
  description = "NixOS VMs in UTM with an Attic cache (the runbook lab's nixos-config)";

  inputs = {
    # Pin our primary nixpkgs repository.
    nixpkgs.url = "github:nixos/nixpkgs/nixos-26.05";

    home-manager = {
      url = "github:nix-community/home-manager/release-26.05";
      inputs.nixpkgs.follows = "nixpkgs";
    };

    # No attic input: nixpkgs has services.atticd and pkgs.attic-client (handbook lesson 1).
  };

  outputs = { self, nixpkgs, home-manager, ... }@inputs: let
    overlays = [ ];
    mkSystem = import ./lib/mksystem.nix { inherit overlays nixpkgs inputs; };
  in {
    nixosConfigurations.vm-aarch64-utm = mkSystem "vm-aarch64-utm" {
      system = "aarch64-linux";
      user = "jqwang";
    };

    nixosConfigurations.vm-aarch64-utm-2 = mkSystem "vm-aarch64-utm-2" {
      system = "aarch64-linux";
      user = "jqwang";
    };

    nixosConfigurations.vm-aarch64-utm-3 = mkSystem "vm-aarch64-utm-3" {
      system = "aarch64-linux";
      user = "jqwang";
    };

    nixosConfigurations.vm-aarch64-utm-4 = mkSystem "vm-aarch64-utm-4" {
      system = "aarch64-linux";
      user = "jqwang";
    };

    nixosConfigurations.vm-aarch64-utm-cache = mkSystem "vm-aarch64-utm-cache" {
      system = "aarch64-linux";
      user = "jqwang";
    };
  };
}
