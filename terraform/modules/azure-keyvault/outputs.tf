output "key_uri" {
  description = "The value to pass to kmsgate --key (or key: in its config file): every version of the key."
  value       = "azurekv://${local.vault_host}/keys/${azurerm_key_vault_key.signing.name}"
}

output "key_id" {
  description = "The key's versionless ID (https://VAULT.vault.azure.net/keys/NAME)."
  value       = azurerm_key_vault_key.signing.versionless_id
}

output "role_definition_name" {
  description = "The role assigned to the gateway's identities on the key."
  value       = local.role
}

output "client_id" {
  description = "Client ID of the workload identity, when workload_identity is set (the ServiceAccount's azure.workload.identity/client-id annotation)."
  value       = var.workload_identity == null ? null : azurerm_user_assigned_identity.gateway[0].client_id
}

output "service_account_annotations" {
  description = "Annotations for the gateway's Kubernetes ServiceAccount (AKS workload identity); empty without workload_identity. The pod also needs the label azure.workload.identity/use: \"true\"."
  value       = var.workload_identity == null ? {} : { "azure.workload.identity/client-id" = azurerm_user_assigned_identity.gateway[0].client_id }
}
