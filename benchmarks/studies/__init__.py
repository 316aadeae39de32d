"""Studies that decided one setting or design (each says what it decided); rerun to check, not needed to use
usb_prep."""
