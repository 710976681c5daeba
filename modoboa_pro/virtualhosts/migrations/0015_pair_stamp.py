from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('virtualhosts', '0014_mail_steps'),
    ]

    operations = [
        migrations.AddField(
            model_name='virtualhost',
            name='pair_stamp',
            field=models.CharField(blank=True, default='', editable=False, max_length=255),
        ),
    ]
