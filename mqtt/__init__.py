"""The MQTT side shared by the device agent and the fleet collector (``ftedge.mqtt``).

:mod:`ftedge.mqtt.contract` is the one home of the topic root, the topic builders, the message kinds, the
envelope keys and the parsing of broker URLs (no MQTT client there); :mod:`ftedge.mqtt.client` is the paho
adapter both sides build their connections with. See ARCHITECTURE.md.
"""
