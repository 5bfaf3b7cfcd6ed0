# Example: a Vault Transit key for kmsgate on Kubernetes. The gateway logs in
# to Vault with its Kubernetes service account kmsgate/kmsgate
# (deploy/kubernetes/overlays/vault: KMSGATE_VAULT_AUTH=kubernetes,
# KMSGATE_VAULT_ROLE=kmsgate) through a Kubernetes auth mount that is already
# configured for the cluster.
#
#   export VAULT_ADDR=... VAULT_TOKEN=...
#   terraform init && terraform apply -var issuer=https://...
#   terraform output -raw kmsgate_config > ../../../deploy/kubernetes/overlays/vault/config.yaml

terraform {
  required_version = ">= 1.9"

  required_providers {
    vault = {
      source  = "hashicorp/vault"
      version = ">= 4.0, < 6.0"
    }
  }
}

# Address and token come from VAULT_ADDR and VAULT_TOKEN.
provider "vault" {}

variable "issuer" {
  description = "URL clients reach the gateway at; the iss of every token."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace the gateway runs in."
  type        = string
  default     = "kmsgate"
}

variable "min_decryption_version" {
  description = "Oldest Transit key version still published; see the rotation walkthrough in terraform/README.md."
  type        = number
  default     = 1
}

module "kmsgate_key" {
  source = "../../modules/vault-transit"

  key_name               = "kmsgate"
  min_decryption_version = var.min_decryption_version

  # The gateway presents a projected token of audience "vault"
  # (deploy/kubernetes/overlays/vault), so the role requires that audience.
  kubernetes_auth = {
    service_account_names = ["kmsgate"]
    namespaces            = [var.namespace]
    audience              = "vault"
  }
}

output "key_uri" {
  description = "Pass to kmsgate --key."
  value       = module.kmsgate_key.key_uri
}

output "vault_policy" {
  description = "The Vault policy the gateway's token carries."
  value       = module.kmsgate_key.policy_name
}

output "vault_role" {
  description = "The Kubernetes auth role the gateway logs in with."
  value       = module.kmsgate_key.kubernetes_role_name
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
