terraform {
  required_version = ">= 1.11.0" # ephemeral resources and write-only arguments

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0"
    }
  }
}
