# dev: the account and region of the environment and the image to run; everything else is in
# main.tf. No real patient data: resources are tagged DataClass = synthetic.
aws_region          = "eu-west-1"
aws_account_id      = "111111111111"
data_classification = "synthetic"
image_tag           = "0.1.0" # CI passes the release tag: -var image_tag=<git sha>
