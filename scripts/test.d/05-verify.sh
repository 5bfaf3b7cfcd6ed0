# The app-side verifier and its echo adapter are modules of their own
# (jwks/verify, jwks/verify/echoverify); their tests run in their modules.
add_module jwks/verify
add_module jwks/verify/echoverify
