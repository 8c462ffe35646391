# The user of every VM: fish as login shell, passwordless sudo through wheel.
{ pkgs, inputs, ... }:

{
  programs.fish.enable = true;

  users.users.jqwang = {
    isNormalUser = true;
    home = "/home/jqwang";
    extraGroups = [ "wheel" ];
    shell = pkgs.fish;
    # Lab-only password (lab/lab.yaml passwords.jqwang), made with `mkpasswd -m sha-512`.
    hashedPassword = "$6$xoiUgi80RSJK3iXg$0PJ6ScyTlb3N932gl02w3UX1ptB7xCoGER/HSKf314nzWWgHgDmGHR56TPKsc6/G9eVaOcsN881JNnG2QLlQv.";
    # The public keys that log in as jqwang after the switch, inline as in
    # mitchellh/nixos-config's users/mitchellh/nixos.nix: your Mac's ~/.ssh/id_ed25519.pub.
    # `runbook lab up` adds the lab's key here in its working copy.
    openssh.authorizedKeys.keys = [ ];
  };
}
