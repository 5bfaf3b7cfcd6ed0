# Example: AWS KMS keys for kmsgate on EKS. The gateway runs as the
# Kubernetes service account kmsgate/kmsgate (deploy/kubernetes/overlays/aws),
# which IRSA maps to the IAM role this creates.
#
#   terraform init && terraform apply -var eks_oidc_provider_arn=... -var issuer=https://...
#   terraform output -raw kmsgate_config > ../../../deploy/kubernetes/overlays/aws/config.yaml

terraform {
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  description = "Region of the keys."
  type        = string
  default     = "eu-west-1"
}

variable "eks_oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider (IRSA)."
  type        = string
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

variable "keys" {
  description = "Signing keys by label; see the rotation walkthrough in terraform/README.md."
  type        = map(object({ enabled = optional(bool, true) }))
  default     = { v1 = {} }
}

module "kmsgate_keys" {
  source = "../../modules/aws-kms"

  alias_prefix = "kmsgate"
  keys         = var.keys

  irsa = {
    oidc_provider_arn = var.eks_oidc_provider_arn
    namespace         = var.namespace
    service_account   = "kmsgate"
  }
}

output "key_uri" {
  description = "Pass to kmsgate --key."
  value       = module.kmsgate_keys.key_uri
}

output "service_account_annotations" {
  description = "Annotations of the kmsgate ServiceAccount (set in deploy/kubernetes/overlays/aws)."
  value       = module.kmsgate_keys.service_account_annotations
}

output "kmsgate_config" {
  description = "The gateway's config file (the kmsgate ConfigMap's config.yaml)."
  value = yamlencode({
    issuer     = var.issuer
    key        = [module.kmsgate_keys.key_uri]
    prepublish = "2h"
    refresh    = "1m"
  })
}
