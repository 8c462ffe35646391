# Settings every VM shares (the shape of mitchellh/nixos-config's machines/vm-shared.nix).
{ config, pkgs, lib, ... }:

{
  nix = {
    extraOptions = ''
      experimental-features = nix-command flakes
      keep-outputs = true
      keep-derivations = true
    '';

    # Workers: the runbook adds the Attic cache here (handbook: worker config).
    settings = {
      substituters = [ "https://cache.nixos.org" ];
      trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
    };
  };

  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
  boot.loader.systemd-boot.consoleMode = "0";

  networking.hostName = lib.mkDefault "dev";
  networking.useDHCP = false;

  time.timeZone = "UTC";

  # Don't require a password for sudo.
  security.sudo.wheelNeedsPassword = false;

  # Users are defined in users/<user>/nixos.nix only.
  users.mutableUsers = false;

  programs.fish.enable = true;

  environment.systemPackages = with pkgs; [ git gnumake rsync ];

  # The VMs find each other as <hostName>.local (nixos-utm-cache.local for the cache).
  services.avahi = {
    enable = true;
    nssmdns4 = true;
    publish = {
      enable = true;
      addresses = true;
    };
  };

  services.openssh.enable = true;
  services.openssh.settings.PasswordAuthentication = true;
  services.openssh.settings.PermitRootLogin = "no";

  # Disable the firewall since we're in a VM and we want to make it easy to visit stuff
  # in here (atticd listens on 8080).
  networking.firewall.enable = false;

  system.stateVersion = "20.09";
}
