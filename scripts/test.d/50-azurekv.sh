# The azurekv backend's tests run in the nested module
# backends/azurekv/fakekv, beside the fake Key Vault they run the real Azure
# SDK against (TLS on 127.0.0.1, started in-process by each test); the fake
# never enters the main go.mod.
add_module backends/azurekv/fakekv
