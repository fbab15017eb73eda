"""The MQTT contract shared by the device agent and the fleet collector (``ftedge.mqtt``).

:mod:`ftedge.mqtt.contract` is the one home of the topic root, the topic builders, the message kinds and
the parsing of broker URLs; it imports nothing of ftedge but :mod:`ftedge.errors` and no MQTT client.
"""
