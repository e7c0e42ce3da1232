"""The pure core: what the router decides, with nothing around it.

"Pure" means: no sockets, no paho, no threads, no clock of its own. Time and
randomness come in as arguments (``now``, an ``rng``), so every decision can
be replayed in a unit test. ``config`` parses the YAML, ``topics`` and
``keys`` read a device's topic, ``balancers`` pick a worker, ``pool`` keeps
the workers the heartbeats describe, ``router`` turns a message into an
action (``held`` keeps those waiting for a worker), ``limits`` and
``poison`` guard against what the broker or a device would refuse or
repeat, ``inflight`` tracks what is forwarded but not yet acknowledged, and
``stats`` turns the counters into the stats snapshot.
The running service (``mqttlb.service``) and the wire (``mqttlb.mqtt``) sit
around it.
"""
