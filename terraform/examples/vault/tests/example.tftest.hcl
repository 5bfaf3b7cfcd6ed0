# The example wires the module to the deployment: the config file names the
# Transit key, and the gateway's Kubernetes service account logs in with a
# role that carries only the gateway policy.

mock_provider "vault" {}

variables {
  issuer = "https://kmsgate.acme.example"
}

run "wires_key_and_identity" {
  command = plan

  assert {
    condition     = output.key_uri == "hashivault://kmsgate"
    error_message = "key_uri is ${output.key_uri}"
  }
  assert {
    condition = yamldecode(output.kmsgate_config) == {
      issuer     = "https://kmsgate.acme.example"
      key        = ["hashivault://kmsgate"]
      prepublish = "2h"
      refresh    = "1m"
    }
    error_message = "the config file must name the key and the issuer: ${output.kmsgate_config}"
  }
  assert {
    condition     = output.vault_policy == "kmsgate-kmsgate" && output.vault_role == "kmsgate"
    error_message = "the gateway must log in with role kmsgate and get policy kmsgate-kmsgate"
  }
}
