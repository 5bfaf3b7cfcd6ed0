variable "alias_prefix" {
  description = <<-EOT
    Prefix of the key aliases: each key gets alias/PREFIX/LABEL, and the
    gateway takes every key under alias/PREFIX/ (--key awskms:///alias/PREFIX/).
  EOT
  type        = string
  default     = "kmsgate"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_-]+(/[a-zA-Z0-9_-]+)*$", var.alias_prefix)) && !startswith(var.alias_prefix, "aws")
    error_message = "alias_prefix must be letters, digits, '_' and '-' in '/'-separated parts, with no leading or trailing '/', and must not start with \"aws\" (reserved by AWS)."
  }
}

variable "keys" {
  description = <<-EOT
    The signing keys, by label (the alias is alias/PREFIX/LABEL). AWS KMS has no
    versions for asymmetric keys: a rotation adds a label. Once the tokens the
    old key signed have expired, set its enabled to false; removing it later
    schedules its deletion after deletion_window_in_days.
  EOT
  type = map(object({
    enabled     = optional(bool, true)
    description = optional(string)
  }))
  default = { v1 = {} }

  validation {
    condition     = alltrue([for k in keys(var.keys) : can(regex("^[a-zA-Z0-9_-]+$", k))])
    error_message = "keys: every label must be letters, digits, '_' or '-'."
  }

  validation {
    condition     = anytrue([for v in values(var.keys) : v.enabled])
    error_message = "keys: at least one key must be enabled, or the gateway has nothing to sign with."
  }
}

variable "deletion_window_in_days" {
  description = "Days a removed key waits, pending deletion and recoverable, before AWS deletes it (7 to 30)."
  type        = number
  default     = 30

  validation {
    condition     = var.deletion_window_in_days >= 7 && var.deletion_window_in_days <= 30 && floor(var.deletion_window_in_days) == var.deletion_window_in_days
    error_message = "deletion_window_in_days must be a whole number from 7 to 30."
  }
}

variable "enable_iam_user_permissions" {
  description = <<-EOT
    Include AWS's default key policy statement that lets IAM policies of this
    account grant access to the keys (needed for the IAM policy this module
    creates to take effect). False makes the key policy the only grant: then
    key_administrator_arns must name who manages the keys, and the gateway
    must be named by irsa or signer_principal_arns.
  EOT
  type        = bool
  default     = true
}

variable "key_administrator_arns" {
  description = "IAM principals that manage the keys (describe, enable, disable, tag, schedule deletion) but cannot sign with them."
  type        = list(string)
  default     = []

  validation {
    condition     = var.enable_iam_user_permissions || length(var.key_administrator_arns) > 0
    error_message = "key_administrator_arns: with enable_iam_user_permissions = false, name at least one administrator, or nobody can manage the keys."
  }
}

variable "signer_principal_arns" {
  description = "IAM principals (for example an existing role the gateway runs as) the key policy allows to sign with the keys and read their public keys."
  type        = list(string)
  default     = []

  validation {
    condition     = var.enable_iam_user_permissions || length(var.signer_principal_arns) > 0 || var.irsa != null
    error_message = "signer_principal_arns: with enable_iam_user_permissions = false, the gateway must be named here or through irsa, or it cannot sign."
  }
}

variable "iam_policy_name" {
  description = "Name of the IAM policy with exactly what the gateway needs on the keys."
  type        = string
  default     = "kmsgate-signer"
}

variable "irsa" {
  description = <<-EOT
    Create an IAM role for a Kubernetes service account (EKS IRSA): the ARN of
    the cluster's IAM OIDC provider, and the namespace and name of the service
    account. The role gets the module's IAM policy.
  EOT
  type = object({
    oidc_provider_arn = string
    namespace         = string
    service_account   = string
    role_name         = optional(string, "kmsgate")
  })
  default = null

  validation {
    condition     = var.irsa == null || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:oidc-provider/.+$", var.irsa.oidc_provider_arn))
    error_message = "irsa.oidc_provider_arn must be an IAM OIDC provider ARN, arn:aws:iam::ACCOUNT:oidc-provider/ISSUER."
  }
}

variable "tags" {
  description = "Tags on every resource the module creates."
  type        = map(string)
  default     = {}
}
