# Settings terraform validate cannot see: key spec and usage, the aliases
# under one prefix, the exact IAM actions and where they apply, the key
# policy, the IRSA trust and the --key URI. Plans only; the account and the
# key ARNs are mocked.

mock_provider "aws" {
  override_during = plan

  mock_data "aws_caller_identity" {
    defaults = { account_id = "111122223333" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_region" {
    defaults = { region = "eu-west-1" }
  }
}

override_resource {
  override_during = plan
  target          = aws_kms_key.signing["v1"]
  values          = { arn = "arn:aws:kms:eu-west-1:111122223333:key/11111111-1111-1111-1111-111111111111", key_id = "11111111-1111-1111-1111-111111111111" }
}

override_resource {
  override_during = plan
  target          = aws_kms_key.signing["v2"]
  values          = { arn = "arn:aws:kms:eu-west-1:111122223333:key/22222222-2222-2222-2222-222222222222", key_id = "22222222-2222-2222-2222-222222222222" }
}

override_resource {
  override_during = plan
  target          = aws_iam_policy.gateway
  values          = { arn = "arn:aws:iam::111122223333:policy/kmsgate-signer" }
}

run "defaults" {
  command = plan

  assert {
    condition     = aws_kms_key.signing["v1"].customer_master_key_spec == "ECC_NIST_P256" && aws_kms_key.signing["v1"].key_usage == "SIGN_VERIFY"
    error_message = "the key must be an ECC_NIST_P256 SIGN_VERIFY key"
  }
  assert {
    condition     = aws_kms_key.signing["v1"].is_enabled == true && aws_kms_key.signing["v1"].deletion_window_in_days == 30
    error_message = "the key must be enabled, with a 30-day deletion window by default"
  }
  assert {
    condition     = keys(aws_kms_alias.signing) == ["v1"] && aws_kms_alias.signing["v1"].name == "alias/kmsgate/v1"
    error_message = "one key with alias alias/kmsgate/v1 by default"
  }
  assert {
    condition     = aws_kms_alias.signing["v1"].target_key_id == "11111111-1111-1111-1111-111111111111"
    error_message = "the alias must point at its key"
  }
  assert {
    condition     = output.key_uri == "awskms:///alias/kmsgate/?region=eu-west-1"
    error_message = "key_uri is ${output.key_uri}"
  }

  # The IAM policy: exactly Sign, GetPublicKey and DescribeKey on
  # the keys (Sign only for ES256 digests), and ListAliases (which has no
  # resource-level permissions).
  assert {
    condition = jsondecode(aws_iam_policy.gateway.policy) == {
      Version = "2012-10-17"
      Statement = [
        {
          Sid       = "Sign"
          Effect    = "Allow"
          Action    = "kms:Sign"
          Resource  = ["arn:aws:kms:eu-west-1:111122223333:key/11111111-1111-1111-1111-111111111111"]
          Condition = { StringEquals = { "kms:SigningAlgorithm" = "ECDSA_SHA_256", "kms:MessageType" = "DIGEST" } }
        },
        {
          Sid      = "ReadPublicKeys"
          Effect   = "Allow"
          Action   = ["kms:DescribeKey", "kms:GetPublicKey"]
          Resource = ["arn:aws:kms:eu-west-1:111122223333:key/11111111-1111-1111-1111-111111111111"]
        },
        {
          Sid      = "FindKeysByAlias"
          Effect   = "Allow"
          Action   = "kms:ListAliases"
          Resource = "*"
        },
      ]
    }
    error_message = "the IAM policy must allow exactly kms:Sign, kms:GetPublicKey, kms:DescribeKey on the keys and kms:ListAliases: ${aws_iam_policy.gateway.policy}"
  }
  assert {
    condition = toset(flatten([for s in jsondecode(aws_iam_policy.gateway.policy).Statement : s.Action])) == toset([
      "kms:DescribeKey", "kms:GetPublicKey", "kms:ListAliases", "kms:Sign",
    ])
    error_message = "the IAM policy must hold exactly four actions"
  }

  # The key policy delegates to IAM (AWS's default) and names nobody else.
  assert {
    condition = jsondecode(aws_kms_key.signing["v1"].policy) == {
      Version = "2012-10-17"
      Statement = [{
        Sid       = "EnableIAMUserPermissions"
        Effect    = "Allow"
        Principal = { AWS = "arn:aws:iam::111122223333:root" }
        Action    = "kms:*"
        Resource  = "*"
      }]
    }
    error_message = "the default key policy must only delegate to IAM: ${aws_kms_key.signing["v1"].policy}"
  }
  assert {
    condition     = length(aws_iam_role.irsa) == 0 && length(output.service_account_annotations) == 0
    error_message = "no IRSA role unless asked for"
  }
}

run "rotation_irsa_and_strict_key_policy" {
  command = plan

  variables {
    alias_prefix                = "prod/kmsgate"
    keys                        = { v1 = { enabled = false }, v2 = {} }
    deletion_window_in_days     = 7
    enable_iam_user_permissions = false
    key_administrator_arns      = ["arn:aws:iam::111122223333:role/terraform"]
    irsa = {
      oidc_provider_arn = "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF"
      namespace         = "kmsgate"
      service_account   = "kmsgate"
    }
  }

  assert {
    condition     = output.key_uri == "awskms:///alias/prod/kmsgate/?region=eu-west-1"
    error_message = "key_uri is ${output.key_uri}"
  }
  assert {
    condition     = aws_kms_alias.signing["v1"].name == "alias/prod/kmsgate/v1" && aws_kms_alias.signing["v2"].name == "alias/prod/kmsgate/v2"
    error_message = "every key must get an alias under the prefix"
  }
  assert {
    condition     = aws_kms_key.signing["v1"].is_enabled == false && aws_kms_key.signing["v2"].is_enabled == true
    error_message = "the old key must be disabled and the new one enabled"
  }
  assert {
    condition     = aws_kms_key.signing["v2"].customer_master_key_spec == "ECC_NIST_P256" && aws_kms_key.signing["v2"].key_usage == "SIGN_VERIFY" && aws_kms_key.signing["v2"].deletion_window_in_days == 7
    error_message = "every key must be an ECC_NIST_P256 SIGN_VERIFY key with the deletion window"
  }
  assert {
    condition = jsondecode(aws_iam_policy.gateway.policy).Statement[0].Resource == [
      "arn:aws:kms:eu-west-1:111122223333:key/11111111-1111-1111-1111-111111111111",
      "arn:aws:kms:eu-west-1:111122223333:key/22222222-2222-2222-2222-222222222222",
    ]
    error_message = "the IAM policy must cover every key"
  }
  assert {
    condition = jsondecode(aws_kms_key.signing["v2"].policy).Statement == [
      {
        Sid       = "KeyAdministrators"
        Effect    = "Allow"
        Principal = { AWS = ["arn:aws:iam::111122223333:role/terraform"] }
        Action    = ["kms:CancelKeyDeletion", "kms:Create*", "kms:Delete*", "kms:Describe*", "kms:Disable*", "kms:Enable*", "kms:Get*", "kms:List*", "kms:Put*", "kms:Revoke*", "kms:ScheduleKeyDeletion", "kms:TagResource", "kms:UntagResource", "kms:Update*"]
        Resource  = "*"
      },
      {
        Sid       = "GatewaySign"
        Effect    = "Allow"
        Principal = { AWS = ["arn:aws:iam::111122223333:role/kmsgate"] }
        Action    = "kms:Sign"
        Resource  = "*"
        Condition = { StringEquals = { "kms:SigningAlgorithm" = "ECDSA_SHA_256", "kms:MessageType" = "DIGEST" } }
      },
      {
        Sid       = "GatewayReadPublicKey"
        Effect    = "Allow"
        Principal = { AWS = ["arn:aws:iam::111122223333:role/kmsgate"] }
        Action    = ["kms:DescribeKey", "kms:GetPublicKey"]
        Resource  = "*"
      },
    ]
    error_message = "the strict key policy must name the administrators (no use) and the gateway role (sign, read): ${aws_kms_key.signing["v2"].policy}"
  }
  assert {
    condition = jsondecode(aws_iam_role.irsa[0].assume_role_policy).Statement == [{
      Effect    = "Allow"
      Principal = { Federated = "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF" }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF:sub" = "system:serviceaccount:kmsgate:kmsgate"
          "oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF:aud" = "sts.amazonaws.com"
        }
      }
    }]
    error_message = "the IRSA role must trust only the gateway's Kubernetes service account"
  }
  assert {
    condition     = aws_iam_role_policy_attachment.irsa[0].policy_arn == "arn:aws:iam::111122223333:policy/kmsgate-signer" && aws_iam_role_policy_attachment.irsa[0].role == "kmsgate"
    error_message = "the IRSA role must get the gateway policy"
  }
  assert {
    condition     = tomap(output.service_account_annotations) == tomap({ "eks.amazonaws.com/role-arn" = "arn:aws:iam::111122223333:role/kmsgate" })
    error_message = "the ServiceAccount annotation must name the IRSA role"
  }
}

run "rejects_short_deletion_window" {
  command = plan

  variables {
    deletion_window_in_days = 3
  }

  expect_failures = [var.deletion_window_in_days]
}

run "rejects_reserved_prefix" {
  command = plan

  variables {
    alias_prefix = "aws/kmsgate"
  }

  expect_failures = [var.alias_prefix]
}

run "rejects_unmanageable_keys" {
  command = plan

  variables {
    enable_iam_user_permissions = false
    signer_principal_arns       = ["arn:aws:iam::111122223333:role/gw"]
  }

  expect_failures = [var.key_administrator_arns]
}
