variable "project_id" {
  description = "Project that holds the key ring, the key and the gateway's service account."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project ID (6 to 30 lower-case letters, digits and hyphens)."
  }
}

variable "location" {
  description = "Cloud KMS location of the key ring, e.g. \"europe-west1\" or \"global\". HSM keys need a location that offers Cloud HSM."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9-]+$", var.location))
    error_message = "location must be a Cloud KMS location such as \"global\" or \"europe-west1\"."
  }
}

variable "key_ring_name" {
  description = "Name of the key ring."
  type        = string
  default     = "kmsgate"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_-]{1,63}$", var.key_ring_name))
    error_message = "key_ring_name must be 1 to 63 letters, digits, underscores or hyphens."
  }
}

variable "create_key_ring" {
  description = "Create the key ring. Key rings cannot be deleted in Cloud KMS, so set this to false to put the key into a key ring that already exists."
  type        = bool
  default     = true
}

variable "key_name" {
  description = "Name of the CryptoKey the gateway signs with."
  type        = string
  default     = "jwt-signing"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_-]{1,63}$", var.key_name))
    error_message = "key_name must be 1 to 63 letters, digits, underscores or hyphens."
  }
}

variable "protection_level" {
  description = "Where the private key lives: \"HSM\" (Cloud HSM, FIPS 140-2 level 3) or \"SOFTWARE\"."
  type        = string
  default     = "HSM"

  validation {
    condition     = contains(["HSM", "SOFTWARE"], var.protection_level)
    error_message = "protection_level must be \"HSM\" or \"SOFTWARE\" (upper case)."
  }
}

variable "versions" {
  description = <<-EOT
    Key versions Terraform manages, by a label of your choice (the label is not
    the Cloud KMS version number). A rotation adds a label; once the tokens the
    old version signed have expired, set the old one's state to "DISABLED", and
    remove it later to schedule its destruction. At least one must be ENABLED.
  EOT
  type = map(object({
    state = optional(string, "ENABLED")
  }))
  default = { v1 = {} }

  validation {
    condition     = alltrue([for k, v in var.versions : can(regex("^[a-zA-Z0-9_-]+$", k)) && contains(["ENABLED", "DISABLED"], v.state)])
    error_message = "versions: every label must be letters, digits, underscores or hyphens, and every state \"ENABLED\" or \"DISABLED\"."
  }

  validation {
    condition     = anytrue([for v in values(var.versions) : v.state == "ENABLED"])
    error_message = "versions: at least one version must be ENABLED, or the gateway has nothing to sign with."
  }
}

variable "destroy_scheduled_duration" {
  description = "How long a removed version stays DESTROY_SCHEDULED (and can be restored) before it is destroyed, e.g. \"2592000s\". Null keeps the Cloud KMS default (30 days)."
  type        = string
  default     = null

  validation {
    condition     = var.destroy_scheduled_duration == null || can(regex("^[0-9]+s$", var.destroy_scheduled_duration))
    error_message = "destroy_scheduled_duration must be a number of seconds with an \"s\" suffix, e.g. \"2592000s\"."
  }
}

variable "labels" {
  description = "Labels on the CryptoKey."
  type        = map(string)
  default     = {}
}

variable "service_account_id" {
  description = "account_id of the service account created for the gateway (ignored when service_account_email is set)."
  type        = string
  default     = "kmsgate"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.service_account_id))
    error_message = "service_account_id must be 6 to 30 lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "service_account_email" {
  description = "Email of an existing service account the gateway runs as. Null creates one named service_account_id."
  type        = string
  default     = null

  validation {
    condition     = var.service_account_email == null || can(regex("^[^@\\s]+@[^@\\s]+\\.gserviceaccount\\.com$", var.service_account_email))
    error_message = "service_account_email must be a service account email (NAME@PROJECT.iam.gserviceaccount.com)."
  }
}

variable "use_custom_role" {
  description = <<-EOT
    Grant the gateway a custom role with exactly the five permissions it uses
    (needs iam.roles.create on the project). False grants the predefined
    roles/cloudkms.signerVerifier and roles/cloudkms.viewer on the key instead,
    which also allow verifying and reading the key's metadata.
  EOT
  type        = bool
  default     = true
}

variable "custom_role_id" {
  description = "ID of the project-level custom role created when use_custom_role is true. Deleted role IDs cannot be reused for 37 days."
  type        = string
  default     = "kmsgateSigner"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_.]{3,64}$", var.custom_role_id))
    error_message = "custom_role_id must be 3 to 64 letters, digits, underscores or dots."
  }
}

variable "workload_identity" {
  description = <<-EOT
    Let a Kubernetes service account act as the gateway's service account
    through GKE Workload Identity: namespace and name of the Kubernetes
    service account, and the workload pool (default PROJECT.svc.id.goog).
  EOT
  type = object({
    namespace       = string
    service_account = string
    pool            = optional(string)
  })
  default = null

  validation {
    condition = var.workload_identity == null || (
      can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.workload_identity.namespace)) &&
      can(regex("^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$", var.workload_identity.service_account))
    )
    error_message = "workload_identity: namespace and service_account must be Kubernetes names (lower-case letters, digits, '-' and '.')."
  }
}
