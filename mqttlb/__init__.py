"""mqttlb: an MQTT broker-side device router."""
