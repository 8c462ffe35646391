# nixpkgs' nixos/modules/profiles/qemu-guest.nix adds the virtio modules to the initrd; the
# lab's copy sets what it sets.
{ ... }:

{
  boot.initrd.availableKernelModules = [ "virtio_net" "virtio_pci" "virtio_mmio" "virtio_blk" "virtio_scsi" ];
}
