variable "mount_path" {
  description = "Path of the Transit secrets engine."
  type        = string
  default     = "transit"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_-]+(/[a-zA-Z0-9_-]+)*$", var.mount_path))
    error_message = "mount_path must be letters, digits, '_' and '-' in '/'-separated parts, with no leading or trailing '/'."
  }
}

variable "create_mount" {
  description = "Mount a Transit secrets engine at mount_path. False uses one that is already mounted there."
  type        = bool
  default     = true
}

variable "key_name" {
  description = "Name of the Transit key the gateway signs with."
  type        = string
  default     = "kmsgate"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_-]+$", var.key_name))
    error_message = "key_name must be letters, digits, '_' or '-'."
  }
}

variable "auto_rotate_period" {
  description = <<-EOT
    Seconds between automatic rotations (a new key version), or 0 for none.
    The gateway publishes a new version for --prepublish before signing with
    it, so any period longer than --prepublish plus the longest token lifetime
    is safe. Vault's minimum is one hour.
  EOT
  type        = number
  default     = 0

  validation {
    condition     = var.auto_rotate_period == 0 || var.auto_rotate_period >= 3600
    error_message = "auto_rotate_period must be 0 (off) or at least 3600 seconds."
  }
}

variable "min_decryption_version" {
  description = <<-EOT
    Oldest key version that may still verify. Raising it retires the versions
    below it: the gateway stops publishing them. Raise it only after the
    tokens those versions signed have expired.
  EOT
  type        = number
  default     = 1

  validation {
    condition     = var.min_decryption_version >= 1 && floor(var.min_decryption_version) == var.min_decryption_version
    error_message = "min_decryption_version must be a whole number, 1 or more."
  }
}

variable "policy_name" {
  description = "Name of the Vault policy for the gateway. Null gives \"kmsgate-KEY_NAME\"."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Vault Enterprise namespace of everything the module creates (null: the provider's)."
  type        = string
  default     = null
}

variable "kubernetes_auth" {
  description = <<-EOT
    Create a role on a Kubernetes auth mount that gives the gateway's
    Kubernetes service accounts a token with the gateway policy.
  EOT
  type = object({
    backend               = optional(string, "kubernetes")
    role_name             = optional(string, "kmsgate")
    service_account_names = list(string)
    namespaces            = list(string)
    audience              = optional(string)
    token_ttl             = optional(number, 3600)
    token_max_ttl         = optional(number, 0)
  })
  default = null

  validation {
    condition = var.kubernetes_auth == null ? true : (
      length(var.kubernetes_auth.service_account_names) > 0 && length(var.kubernetes_auth.namespaces) > 0 &&
      !contains(var.kubernetes_auth.service_account_names, "*") && !contains(var.kubernetes_auth.namespaces, "*")
    )
    error_message = "kubernetes_auth: name the service accounts and namespaces; \"*\" would let any pod sign."
  }
}

variable "approle" {
  description = "Create an AppRole role with the gateway policy, for gateways outside Kubernetes."
  type = object({
    backend               = optional(string, "approle")
    role_name             = optional(string, "kmsgate")
    token_ttl             = optional(number, 3600)
    token_max_ttl         = optional(number, 0)
    secret_id_ttl         = optional(number, 0)
    token_bound_cidrs     = optional(list(string), [])
    secret_id_bound_cidrs = optional(list(string), [])
  })
  default = null
}
