terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0"
    }
  }
}

# One provider serves every region: AWS provider >= 6 takes a per-resource `region` argument.
provider "aws" {
  region = var.home_region
}
