# Terraform modules and examples (terraform/): fmt -check, then init
# -backend=false, validate and test for each, offline, against the
# schema-only provider built from the committed schemas. Any failure fails
# the run. The provider's own tests (including deliberate mistakes that must
# fail) run as a nested module.
if ! command -v terraform >/dev/null 2>&1; then
  echo "40-terraform.sh: terraform is not installed; the Terraform checks need Terraform 1.11 or later on PATH" >&2
  return 1
fi
"$ROOT/terraform/tools/check.sh" "$KMSGATE_TEST_WORK/terraform"
add_module terraform/tools/schemaprovider
