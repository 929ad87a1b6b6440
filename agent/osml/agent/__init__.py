"""One device's agent: its config, state, model cards, ONNX inference, data sources, the round
loop, the trainer client and the runtime that drives rounds over MQTT. Never imports torch."""
