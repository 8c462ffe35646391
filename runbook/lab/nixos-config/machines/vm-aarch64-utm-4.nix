# Worker VM 4 in UTM: the same machine as vm-aarch64-utm (UTM VM names are unique, and
# NIXNAME names the configuration, so each worker VM has its own).
{ config, pkgs, ... }:

{
  imports = [ ./vm-aarch64-utm.nix ];
}
