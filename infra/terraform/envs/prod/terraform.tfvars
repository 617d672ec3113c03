# prod: the account and region of the environment and the image to run; everything else is in
# main.tf.
aws_region          = "eu-west-1"
aws_account_id      = "333333333333"
data_classification = "phi"
image_tag           = "0.1.0" # CI passes the release tag: -var image_tag=<git sha>
