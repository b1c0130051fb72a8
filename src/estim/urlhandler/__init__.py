"""pyserial URL handlers that estim adds, found the way pyserial finds its own:
``serial.serial_for_url("sim://...")`` imports ``estim.urlhandler.protocol_sim``
once ``estim.urlhandler`` is in ``serial.protocol_handler_packages``. Registering
the package imports nothing else, so the driver never loads the simulator unless
a ``sim://`` URL is opened."""
