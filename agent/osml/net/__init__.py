"""The network edge: the MQTT transport (the only module that imports paho) and the brokers
osml starts for tests and local fleets (Mosquitto, the embedded pure-Python fallback)."""
