# The lab's nixpkgs: just enough of `lib` and `lib.nixosSystem` for this checkout's modules to
# evaluate and build offline with the machine's own Nix (Debian's 2.8 included), no input
# fetched. A real NixOS evaluation merges option definitions by their declared types; this one
# merges them the way those types do for what the checkout sets (attribute sets merged, lists
# concatenated, equal values kept, mkDefault < a plain value < mkForce), and refuses what the
# module system refuses: two different plain values for one option ("conflicting definition
# values", nixpkgs lib/options.nix mergeEqualOption), an undefined package or variable, a file
# that does not parse. `config.system.build.toplevel` is a real derivation whose output holds
# the evaluated configuration (config.json): what the lab's nixos-rebuild builds and activates.
let
  inherit (builtins)
    attrNames concatMap concatStringsSep elem filter foldl' isAttrs isFunction isList isPath
    listToAttrs toJSON;

  priorityOf = v: if isAttrs v && v ? _labPriority then v._labPriority else 100;
  valueOf = v: if isAttrs v && v ? _labPriority then v.value else v;
  isPackage = v: isAttrs v && v ? outPath;

  # One option path's two definitions, as the module system merges them (see the top).
  merge = path: a: b:
    let
      pa = priorityOf a;
      pb = priorityOf b;
      va = valueOf a;
      vb = valueOf b;
    in
    if pa != pb then (if pa < pb then a else b)
    else if isAttrs va && isAttrs vb && !(isPackage va) && !(isPackage vb) then
      mergeSets path va vb
    else if isList va && isList vb then va ++ vb
    else if va == vb then a
    else throw "The option `${concatStringsSep "." path}' has conflicting definition values.";

  mergeSets = path: a: b:
    a // listToAttrs (map (name: {
      inherit name;
      value = if a ? ${name} then merge (path ++ [ name ]) a.${name} b.${name} else b.${name};
    }) (attrNames b));

  # The winning value of every option, priorities gone.
  final = v:
    let u = valueOf v; in
    if isAttrs u && !(isPackage u) then builtins.mapAttrs (_: final) u
    else if isList u then map final u
    else u;

  lib = {
    mkOverride = priority: value: { _labPriority = priority; inherit value; };
    mkDefault = lib.mkOverride 1000;
    mkForce = lib.mkOverride 50;
    mkIf = condition: value: if condition then value else { };
    mkMerge = foldl' (merge [ ]) { };
    optional = condition: x: if condition then [ x ] else [ ];
    optionals = condition: xs: if condition then xs else [ ];
    nixosSystem = nixosSystem;
  };

  # The packages this checkout may name (pkgs.NAME); any other name is an undefined
  # attribute, as a misspelt package is in nixpkgs.
  packageNames = [
    "attic-client" "attic-server" "bash" "coreutils" "curl" "fish" "git" "gnumake" "htop"
    "jq" "openssh" "rsync" "tmux" "vim" "wget"
  ];
  pkgs = listToAttrs (map (name: {
    inherit name;
    value = { inherit name; pname = name; outPath = "/run/current-system/sw/pkgs/${name}"; };
  }) packageNames);

  modulesPath = ./nixos/modules;

  nixosSystem = { system, modules, specialArgs ? { } }:
    let
      # `config._module.args` of the modules given as attribute sets (mksystem.nix's), read
      # without the configuration they help to make, so no module's arguments depend on it.
      moduleArgs = foldl' (args: m:
        args // (if isAttrs m then ((m.config or { })._module or { }).args or { } else { })
      ) { } modules;
      args = moduleArgs // specialArgs // { inherit config lib pkgs modulesPath; };
      load = m: if isPath m then import m else m;
      # Each module with its imports, depth first; a function is called with the arguments.
      collect = m:
        let
          loaded = load m;
          body = if isFunction loaded then loaded args else loaded;
          full = body ? config || body ? options;
          own = if full then body.config or { } else removeAttrs body [ "imports" ];
        in
        [ own ] ++ concatMap collect (body.imports or [ ]);
      definitions = concatMap collect modules;
      merged = foldl' (merge [ ]) { } definitions;
      config = final merged;
      rendered = removeAttrs config [ "_module" ];
      hostName = (config.networking or { }).hostName or "nixos";
      toplevel = derivation {
        name = "nixos-system-${hostName}-lab";
        system = builtins.currentSystem; # the builder runs here, whatever `system` says
        builder = "/bin/sh";
        args = [ "-c" "/bin/mkdir $out && printf '%s\\n' \"$configJSON\" > $out/config.json" ];
        configJSON = toJSON rendered;
        targetSystem = system;
      };
    in
    {
      config = config // {
        system = (config.system or { }) // { build = { inherit toplevel; }; };
      };
    };
in
{ inherit lib pkgs; }
