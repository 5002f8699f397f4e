"""Hardware models: targets as YAML data, the roofline and Eyeriss-style cost models."""
