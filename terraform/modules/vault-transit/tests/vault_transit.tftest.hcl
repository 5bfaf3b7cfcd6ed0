# Settings terraform validate cannot see: the key type, deletion disallowed,
# the exact policy paths and capabilities, the auth roles' bindings and the
# --key URI. Plans only.

mock_provider "vault" {}

run "defaults" {
  command = plan

  assert {
    condition     = vault_mount.transit[0].path == "transit" && vault_mount.transit[0].type == "transit"
    error_message = "a Transit engine must be mounted at transit"
  }
  assert {
    condition     = vault_transit_secret_backend_key.signing.type == "ecdsa-p256" && vault_transit_secret_backend_key.signing.name == "kmsgate" && vault_transit_secret_backend_key.signing.backend == "transit"
    error_message = "the key must be an ecdsa-p256 key named kmsgate in the transit mount"
  }
  assert {
    condition     = vault_transit_secret_backend_key.signing.deletion_allowed == false
    error_message = "deleting the key must be disallowed"
  }
  assert {
    condition     = vault_transit_secret_backend_key.signing.exportable == false && vault_transit_secret_backend_key.signing.allow_plaintext_backup == false
    error_message = "the private key must not be exportable"
  }
  assert {
    condition     = vault_policy.gateway.name == "kmsgate-kmsgate" && output.policy_name == "kmsgate-kmsgate"
    error_message = "the policy must be named kmsgate-KEY"
  }
  assert {
    condition     = vault_policy.gateway.policy == <<-EOT
      # kmsgate: read the versions and public keys of Transit key kmsgate
      # and sign with it. Nothing else: not rotate, not configure, not export.
      path "transit/keys/kmsgate" {
        capabilities = ["read"]
      }

      path "transit/sign/kmsgate" {
        capabilities = ["update"]
      }
    EOT
    error_message = "the policy must allow exactly read on transit/keys/kmsgate and update on transit/sign/kmsgate: ${vault_policy.gateway.policy}"
  }
  assert {
    condition     = output.key_uri == "hashivault://kmsgate"
    error_message = "key_uri is ${output.key_uri}"
  }
  assert {
    condition     = length(vault_kubernetes_auth_backend_role.gateway) == 0 && length(vault_approle_auth_backend_role.gateway) == 0
    error_message = "no auth roles unless asked for"
  }
}

run "existing_mount_and_auth_roles" {
  command = plan

  variables {
    create_mount           = false
    mount_path             = "secrets/jwt"
    key_name               = "tokens"
    policy_name            = "gateway"
    min_decryption_version = 3
    auto_rotate_period     = 2592000
    kubernetes_auth = {
      service_account_names = ["kmsgate"]
      namespaces            = ["auth"]
      audience              = "vault"
    }
    approle = {
      backend       = "approle-ci"
      secret_id_ttl = 86400
    }
  }

  assert {
    condition     = length(vault_mount.transit) == 0
    error_message = "an existing mount must not be created"
  }
  assert {
    condition     = output.key_uri == "hashivault://tokens?mount=secrets/jwt"
    error_message = "key_uri is ${output.key_uri}"
  }
  assert {
    condition     = vault_transit_secret_backend_key.signing.backend == "secrets/jwt" && vault_transit_secret_backend_key.signing.min_decryption_version == 3 && vault_transit_secret_backend_key.signing.auto_rotate_period == 2592000
    error_message = "the key must be in the given mount with the given versions and rotation"
  }
  assert {
    condition     = strcontains(vault_policy.gateway.policy, "path \"secrets/jwt/keys/tokens\" {\n  capabilities = [\"read\"]\n}") && strcontains(vault_policy.gateway.policy, "path \"secrets/jwt/sign/tokens\" {\n  capabilities = [\"update\"]\n}")
    error_message = "the policy paths must be under the mount: ${vault_policy.gateway.policy}"
  }
  assert {
    condition     = length(regexall("path ", vault_policy.gateway.policy)) == 2 && length(regexall("capabilities", vault_policy.gateway.policy)) == 2
    error_message = "the policy must hold exactly two paths"
  }
  assert {
    condition = (
      vault_kubernetes_auth_backend_role.gateway[0].backend == "kubernetes" &&
      vault_kubernetes_auth_backend_role.gateway[0].role_name == "kmsgate" &&
      vault_kubernetes_auth_backend_role.gateway[0].bound_service_account_names == toset(["kmsgate"]) &&
      vault_kubernetes_auth_backend_role.gateway[0].bound_service_account_namespaces == toset(["auth"]) &&
      vault_kubernetes_auth_backend_role.gateway[0].audience == "vault" &&
      vault_kubernetes_auth_backend_role.gateway[0].token_policies == toset(["gateway"])
    )
    error_message = "the Kubernetes role must bind only the gateway's service account to only the gateway policy"
  }
  assert {
    condition     = vault_approle_auth_backend_role.gateway[0].backend == "approle-ci" && vault_approle_auth_backend_role.gateway[0].token_policies == toset(["gateway"]) && vault_approle_auth_backend_role.gateway[0].secret_id_ttl == 86400
    error_message = "the AppRole role must carry only the gateway policy"
  }
  assert {
    condition     = output.kubernetes_role_name == "kmsgate"
    error_message = "kubernetes_role_name must name the role"
  }
}

run "rejects_wildcard_service_account" {
  command = plan

  variables {
    kubernetes_auth = {
      service_account_names = ["*"]
      namespaces            = ["auth"]
    }
  }

  expect_failures = [var.kubernetes_auth]
}

run "rejects_short_rotation_period" {
  command = plan

  variables {
    auto_rotate_period = 60
  }

  expect_failures = [var.auto_rotate_period]
}
