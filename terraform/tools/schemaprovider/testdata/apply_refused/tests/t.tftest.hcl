# No mock_provider: the schema-only provider itself is asked to apply.
run "apply" {
  command = apply
}
