"""The ``mqttlb`` command: ``cli`` parses the arguments, one module per subcommand.

``run`` itself is the service (``mqttlb.service``); here are the others:
``demo``, ``simulate``, ``status``, ``credentials``, the benches, and
``broker``, the private Mosquitto that the demo, the benches and the tests start.
"""
