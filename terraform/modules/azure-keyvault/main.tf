# An Azure Key Vault P-256 signing key for kmsgate and the least-privilege
# role the gateway runs with. The gateway itself never creates, changes or
# deletes keys.

locals {
  # The role the gateway needs: read the key's versions and public keys and
  # sign (Microsoft.KeyVault/vaults/keys/read and keys/sign/action, among
  # the role's other crypto actions). Assigned on the key, not on the vault.
  role = "Key Vault Crypto User"

  # https://VAULT.vault.azure.net from the key's ID.
  vault_host = regex("^https://([^/]+)/", azurerm_key_vault_key.signing.versionless_id)[0]

  principals = merge(
    { for i, p in var.gateway_principal_ids : "principal-${i}" => p },
    var.workload_identity == null ? {} : { workload-identity = azurerm_user_assigned_identity.gateway[0].principal_id },
  )
}

resource "azurerm_key_vault_key" "signing" {
  name         = var.key_name
  key_vault_id = var.key_vault_id
  key_type     = var.key_type
  curve        = "P-256"
  key_opts     = ["sign", "verify"]
  tags         = var.tags

  dynamic "rotation_policy" {
    for_each = var.rotation_policy == null ? [] : [var.rotation_policy]
    content {
      expire_after         = rotation_policy.value.expire_after
      notify_before_expiry = rotation_policy.value.notify_before_expiry
      automatic {
        time_after_creation = rotation_policy.value.rotate_after_creation
      }
    }
  }

  lifecycle {
    prevent_destroy = true
  }
}

resource "azurerm_user_assigned_identity" "gateway" {
  count = var.workload_identity == null ? 0 : 1

  name                = var.workload_identity.identity_name
  resource_group_name = var.workload_identity.resource_group_name
  location            = var.workload_identity.location
  tags                = var.tags
}

resource "azurerm_federated_identity_credential" "gateway" {
  count = var.workload_identity == null ? 0 : 1

  name                = "kmsgate-${var.workload_identity.namespace}-${var.workload_identity.service_account}"
  resource_group_name = var.workload_identity.resource_group_name
  parent_id           = azurerm_user_assigned_identity.gateway[0].id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = var.workload_identity.oidc_issuer_url
  subject             = "system:serviceaccount:${var.workload_identity.namespace}:${var.workload_identity.service_account}"
}

resource "azurerm_role_assignment" "gateway" {
  for_each = local.principals

  scope                = azurerm_key_vault_key.signing.resource_versionless_id
  role_definition_name = local.role
  principal_id         = each.value
  description          = "kmsgate: sign with and read the versions of key ${var.key_name}"
}
