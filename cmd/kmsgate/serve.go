package main

import "github.com/spf13/cobra"

func newServeCmd() *cobra.Command {
	return &cobra.Command{Use: "serve", Short: "Run the gateway", Args: exactArgs(0), RunE: func(*cobra.Command, []string) error { return usagef("serve: not built yet") }}
}
