# Least-privilege Vault policy for kmsgate on one Transit key.
# Replace "transit" with the Transit mount and NAME with the key name
# (hashivault://NAME?mount=transit). kmsgate reads the key's versions and
# public keys, and signs; it never creates, rotates, configures or deletes
# keys. Renewing its own token uses auth/token/renew-self and lookup-self,
# which Vault's built-in "default" policy already allows.
path "transit/keys/NAME" {
  capabilities = ["read"]
}

path "transit/sign/NAME" {
  capabilities = ["update"]
}
