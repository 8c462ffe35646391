# atticd from nixpkgs (no attic flake input: handbook lesson 1), served on port 8080 as
# http://nixos-utm-cache.local:8080/ for the workers. Like a real checkout before the runbook,
# no attic client here: services.atticd installs only atticd-atticadm, and notebook 05 adds
# pkgs.attic-client to this file (notebook 06 runs `attic` on the cache VM).
{ config, pkgs, lib, ... }:

{
  services.atticd = {
    enable = true;

    # ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64=... (base64 of an RSA PEM; handbook lesson 2).
    environmentFile = "/var/lib/atticd/env";

    settings = {
      listen = "[::]:8080";
      jwt = { };
      chunking = {
        nar-size-threshold = 64 * 1024;
        min-size = 16 * 1024;
        avg-size = 64 * 1024;
        max-size = 256 * 1024;
      };
    };
  };

  networking.firewall.allowedTCPPorts = [ 8080 ];
}
