"""The Mac side: UTM (utmctl, AppleScript), console typing, address discovery."""
