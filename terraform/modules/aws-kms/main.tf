# AWS KMS signing keys for kmsgate, their aliases under one prefix, and the
# least-privilege permissions the gateway runs with. The gateway itself never
# creates, changes or deletes keys.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

locals {
  account_root = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"

  # What the awskms backend calls, and nothing else: ListAliases to find the
  # keys under the prefix (it supports no resource-level permissions), then
  # DescribeKey, GetPublicKey and Sign on those keys. The backend signs only
  # digests with ECDSA_SHA_256, so Sign is limited to exactly that.
  sign_conditions = {
    StringEquals = {
      "kms:SigningAlgorithm" = "ECDSA_SHA_256"
      "kms:MessageType"      = "DIGEST"
    }
  }

  # Key administration without use (AWS's default key administrator set).
  admin_actions = [
    "kms:CancelKeyDeletion",
    "kms:Create*",
    "kms:Delete*",
    "kms:Describe*",
    "kms:Disable*",
    "kms:Enable*",
    "kms:Get*",
    "kms:List*",
    "kms:Put*",
    "kms:Revoke*",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:Update*",
  ]

  irsa_issuer = var.irsa == null ? null : regex("oidc-provider/(.+)$", var.irsa.oidc_provider_arn)[0]
  # The role's ARN, known at plan time (the role is created first, see
  # depends_on of the keys: a key policy may only name principals that exist).
  irsa_role_arn = var.irsa == null ? null : "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:role/${var.irsa.role_name}"
  signers       = concat(var.signer_principal_arns, var.irsa == null ? [] : [local.irsa_role_arn])

  # Statements of every key's policy, each included when its condition holds.
  key_policy_statements = [for s in [
    {
      include = var.enable_iam_user_permissions
      statement = {
        Sid       = "EnableIAMUserPermissions"
        Effect    = "Allow"
        Principal = { AWS = local.account_root }
        Action    = "kms:*"
        Resource  = "*"
      }
    },
    {
      include = length(var.key_administrator_arns) > 0
      statement = {
        Sid       = "KeyAdministrators"
        Effect    = "Allow"
        Principal = { AWS = var.key_administrator_arns }
        Action    = local.admin_actions
        Resource  = "*"
      }
    },
    {
      include = length(local.signers) > 0
      statement = {
        Sid       = "GatewaySign"
        Effect    = "Allow"
        Principal = { AWS = local.signers }
        Action    = "kms:Sign"
        Resource  = "*"
        Condition = local.sign_conditions
      }
    },
    {
      include = length(local.signers) > 0
      statement = {
        Sid       = "GatewayReadPublicKey"
        Effect    = "Allow"
        Principal = { AWS = local.signers }
        Action    = ["kms:DescribeKey", "kms:GetPublicKey"]
        Resource  = "*"
      }
    },
  ] : s.statement if s.include]
}

resource "aws_kms_key" "signing" {
  for_each = var.keys

  description              = coalesce(each.value.description, "kmsgate JWT signing key ${var.alias_prefix}/${each.key}")
  customer_master_key_spec = "ECC_NIST_P256"
  key_usage                = "SIGN_VERIFY"
  is_enabled               = each.value.enabled
  deletion_window_in_days  = var.deletion_window_in_days
  policy                   = jsonencode({ Version = "2012-10-17", Statement = local.key_policy_statements })
  tags                     = var.tags

  depends_on = [aws_iam_role.irsa]
}

resource "aws_kms_alias" "signing" {
  for_each = var.keys

  name          = "alias/${var.alias_prefix}/${each.key}"
  target_key_id = aws_kms_key.signing[each.key].key_id
}

resource "aws_iam_policy" "gateway" {
  name        = var.iam_policy_name
  description = "kmsgate: sign with and read the public keys of the keys under alias/${var.alias_prefix}/"
  tags        = var.tags
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "Sign"
        Effect    = "Allow"
        Action    = "kms:Sign"
        Resource  = [for k in sort(keys(var.keys)) : aws_kms_key.signing[k].arn]
        Condition = local.sign_conditions
      },
      {
        Sid      = "ReadPublicKeys"
        Effect   = "Allow"
        Action   = ["kms:DescribeKey", "kms:GetPublicKey"]
        Resource = [for k in sort(keys(var.keys)) : aws_kms_key.signing[k].arn]
      },
      {
        Sid      = "FindKeysByAlias"
        Effect   = "Allow"
        Action   = "kms:ListAliases"
        Resource = "*"
      },
    ]
  })
}

resource "aws_iam_role" "irsa" {
  count = var.irsa == null ? 0 : 1

  name        = var.irsa.role_name
  description = "kmsgate gateway, assumed by ${var.irsa.namespace}/${var.irsa.service_account} through IRSA"
  tags        = var.tags
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Federated = var.irsa.oidc_provider_arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "${local.irsa_issuer}:sub" = "system:serviceaccount:${var.irsa.namespace}:${var.irsa.service_account}"
          "${local.irsa_issuer}:aud" = "sts.amazonaws.com"
        }
      }
    }]
  })
}

resource "aws_iam_role_policy_attachment" "irsa" {
  count = var.irsa == null ? 0 : 1

  role       = aws_iam_role.irsa[0].name
  policy_arn = aws_iam_policy.gateway.arn
}
