variable "key_vault_id" {
  description = <<-EOT
    Resource ID of the Key Vault that holds the key. The vault must use Azure
    RBAC (enable_rbac_authorization = true) for the role assignment to take
    effect, and the Premium SKU for EC-HSM keys.
  EOT
  type        = string

  validation {
    condition     = can(regex("^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft.KeyVault/vaults/[^/]+$", var.key_vault_id))
    error_message = "key_vault_id must be a Key Vault resource ID: /subscriptions/S/resourceGroups/G/providers/Microsoft.KeyVault/vaults/V."
  }
}

variable "key_name" {
  description = "Name of the signing key in the vault."
  type        = string
  default     = "kmsgate"

  validation {
    condition     = can(regex("^[a-zA-Z0-9-]{1,127}$", var.key_name))
    error_message = "key_name must be 1 to 127 letters, digits and '-'."
  }
}

variable "key_type" {
  description = "EC-HSM (HSM-protected, Premium vaults; the default) or EC (software-protected). Always curve P-256."
  type        = string
  default     = "EC-HSM"

  validation {
    condition     = contains(["EC-HSM", "EC"], var.key_type)
    error_message = "key_type must be EC-HSM or EC: the gateway signs ES256 with P-256 keys only."
  }
}

variable "rotation_policy" {
  description = <<-EOT
    Optional automatic rotation (ISO 8601 durations): rotate_after_creation
    makes a new version that long after the current one was created;
    expire_after sets each new version's expiry. The gateway publishes a new
    version at once and signs with it after --prepublish (2h by default), so
    rotate well before expire_after, by more than the longest token lifetime.
  EOT
  type = object({
    rotate_after_creation = string
    expire_after          = optional(string)
    notify_before_expiry  = optional(string)
  })
  default = null
}

variable "gateway_principal_ids" {
  description = "Object (principal) IDs of existing identities the gateway runs as (a managed identity, a service principal), granted Key Vault Crypto User on the key."
  type        = list(string)
  default     = []
}

variable "workload_identity" {
  description = <<-EOT
    Optional AKS workload identity: a user-assigned managed identity in
    resource_group_name, federated with the cluster's OIDC issuer for the
    gateway's Kubernetes ServiceAccount, and granted Key Vault Crypto User on
    the key.
  EOT
  type = object({
    identity_name       = optional(string, "kmsgate")
    resource_group_name = string
    location            = string
    oidc_issuer_url     = string
    namespace           = optional(string, "kmsgate")
    service_account     = optional(string, "kmsgate")
  })
  default = null

  validation {
    condition     = var.workload_identity == null || startswith(try(var.workload_identity.oidc_issuer_url, ""), "https://")
    error_message = "workload_identity.oidc_issuer_url must be the cluster's https OIDC issuer URL (az aks show --query oidcIssuerProfile.issuerUrl)."
  }
}

variable "tags" {
  description = "Tags for the key and the identity."
  type        = map(string)
  default     = {}
}
