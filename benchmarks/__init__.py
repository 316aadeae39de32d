"""usb_prep's benchmarks, run by hand: ``python -m benchmarks --help`` lists them (results go to
``benchmarks/results/``). Not installed with the package; reads ``--data`` / ``$USB_PREP_DATA``."""
