# Settings terraform validate cannot see: the key type, curve and
# operations, rotation, the role and where it is assigned, the workload
# identity's federation and the --key URI. Plans only; the provider is
# mocked.

mock_provider "azurerm" {
  override_during = plan
}

override_resource {
  override_during = plan
  target          = azurerm_key_vault_key.signing
  values = {
    versionless_id          = "https://acme-jwt.vault.azure.net/keys/kmsgate"
    resource_versionless_id = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/jwt/providers/Microsoft.KeyVault/vaults/acme-jwt/keys/kmsgate"
  }
}

override_resource {
  override_during = plan
  target          = azurerm_user_assigned_identity.gateway
  values = {
    id           = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/aks/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kmsgate"
    principal_id = "11111111-1111-1111-1111-111111111111"
    client_id    = "22222222-2222-2222-2222-222222222222"
  }
}

variables {
  key_vault_id = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/jwt/providers/Microsoft.KeyVault/vaults/acme-jwt"
}

run "defaults" {
  command = plan

  assert {
    condition     = azurerm_key_vault_key.signing.key_type == "EC-HSM" && azurerm_key_vault_key.signing.curve == "P-256"
    error_message = "the key must be EC-HSM on P-256"
  }
  assert {
    condition     = toset(azurerm_key_vault_key.signing.key_opts) == toset(["sign", "verify"])
    error_message = "the key may only sign and verify"
  }
  assert {
    condition     = length(azurerm_key_vault_key.signing.rotation_policy) == 0
    error_message = "no rotation policy unless asked for"
  }
  assert {
    condition     = output.key_uri == "azurekv://acme-jwt.vault.azure.net/keys/kmsgate"
    error_message = "key_uri is ${output.key_uri}"
  }
  assert {
    condition     = length(azurerm_role_assignment.gateway) == 0 && length(azurerm_user_assigned_identity.gateway) == 0 && length(azurerm_federated_identity_credential.gateway) == 0
    error_message = "no identity or role assignment unless asked for"
  }
  assert {
    condition     = length(output.service_account_annotations) == 0 && output.client_id == null
    error_message = "no annotations without workload_identity"
  }
}

run "workload_identity_rotation_and_principals" {
  command = plan

  variables {
    key_type              = "EC"
    gateway_principal_ids = ["33333333-3333-3333-3333-333333333333"]
    rotation_policy       = { rotate_after_creation = "P60D", expire_after = "P90D", notify_before_expiry = "P7D" }
    workload_identity = {
      resource_group_name = "aks"
      location            = "westeurope"
      oidc_issuer_url     = "https://westeurope.oic.prod-aks.azure.com/00000000-0000-0000-0000-000000000000/11111111-1111-1111-1111-111111111111/"
      namespace           = "auth"
    }
  }

  assert {
    condition     = azurerm_key_vault_key.signing.key_type == "EC" && azurerm_key_vault_key.signing.curve == "P-256"
    error_message = "key_type EC must still be P-256"
  }
  assert {
    condition     = azurerm_key_vault_key.signing.rotation_policy[0].automatic[0].time_after_creation == "P60D" && azurerm_key_vault_key.signing.rotation_policy[0].expire_after == "P90D"
    error_message = "the rotation policy must rotate after 60 days and expire after 90"
  }
  assert {
    condition     = length(azurerm_role_assignment.gateway) == 2 && alltrue([for r in azurerm_role_assignment.gateway : r.role_definition_name == "Key Vault Crypto User" && r.scope == "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/jwt/providers/Microsoft.KeyVault/vaults/acme-jwt/keys/kmsgate"])
    error_message = "each principal must get Key Vault Crypto User on the key only (not the vault)"
  }
  assert {
    condition     = toset([for r in azurerm_role_assignment.gateway : r.principal_id]) == toset(["33333333-3333-3333-3333-333333333333", "11111111-1111-1111-1111-111111111111"])
    error_message = "the roles must go to the given principal and the workload identity"
  }
  assert {
    condition     = azurerm_federated_identity_credential.gateway[0].subject == "system:serviceaccount:auth:kmsgate" && one(azurerm_federated_identity_credential.gateway[0].audience) == "api://AzureADTokenExchange" && startswith(azurerm_federated_identity_credential.gateway[0].issuer, "https://westeurope.oic.prod-aks.azure.com/")
    error_message = "the federated credential must trust the cluster's issuer for auth/kmsgate with the token exchange audience"
  }
  assert {
    condition     = output.service_account_annotations == tomap({ "azure.workload.identity/client-id" = "22222222-2222-2222-2222-222222222222" })
    error_message = "the ServiceAccount annotation must carry the identity's client ID"
  }
}

run "refuses_rsa" {
  command = plan

  variables {
    key_type = "RSA-HSM"
  }
  expect_failures = [var.key_type]
}

run "refuses_a_vault_name" {
  command = plan

  variables {
    key_vault_id = "acme-jwt"
  }
  expect_failures = [var.key_vault_id]
}
