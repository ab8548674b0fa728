"""`make bench`: throughput and latency of reverb-runtime against raw llama.cpp and llama-cpp-python's server."""
