{
  description = "NixOS VMs in UTM with an Attic cache (the runbook lab's nixos-config)";

  # No inputs: nothing is fetched, so the machine's own Nix evaluates and builds this flake
  # offline (the runbook's lab). lib/nixpkgs plays nixpkgs; a checkout of your own pins
  # `nixpkgs.url = "github:nixos/nixpkgs/nixos-26.05"` here instead.
  # No attic input: nixpkgs has services.atticd and pkgs.attic-client (handbook lesson 1).
  inputs = { };

  outputs = { self, ... }@inputs: let
    nixpkgs = import ./lib/nixpkgs;
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
