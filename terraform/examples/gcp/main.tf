# Example: a Cloud KMS HSM key for kmsgate on GKE. The gateway runs as the
# Kubernetes service account kmsgate/kmsgate (deploy/kubernetes/overlays/gcp),
# which Workload Identity maps to the Google service account this creates.
#
#   terraform init && terraform apply -var project_id=... -var issuer=https://...
#   terraform output -raw kmsgate_config > ../../../deploy/kubernetes/overlays/gcp/config.yaml

terraform {
  required_version = ">= 1.9"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 9.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

variable "project_id" {
  description = "Project of the key, the service account and the GKE cluster."
  type        = string
}

variable "region" {
  description = "Location of the key ring (a region that offers Cloud HSM)."
  type        = string
  default     = "europe-west1"
}

variable "issuer" {
  description = "URL clients reach the gateway at; the iss of every token."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace the gateway runs in."
  type        = string
  default     = "kmsgate"
}

variable "versions" {
  description = "Key versions by label; see the rotation walkthrough in terraform/README.md."
  type        = map(object({ state = optional(string, "ENABLED") }))
  default     = { v1 = {} }
}

module "kmsgate_key" {
  source = "../../modules/gcp-kms"

  project_id = var.project_id
  location   = var.region
  versions   = var.versions

  workload_identity = {
    namespace       = var.namespace
    service_account = "kmsgate"
  }
}

output "key_uri" {
  description = "Pass to kmsgate --key."
  value       = module.kmsgate_key.key_uri
}

output "service_account_annotations" {
  description = "Annotations of the kmsgate ServiceAccount (set in deploy/kubernetes/overlays/gcp)."
  value       = module.kmsgate_key.service_account_annotations
}

output "kmsgate_config" {
  description = "The gateway's config file (the kmsgate ConfigMap's config.yaml)."
  value = yamlencode({
    issuer     = var.issuer
    key        = [module.kmsgate_key.key_uri]
    prepublish = "2h"
    refresh    = "1m"
  })
}
